"""``python -m stripe_emulator [--host 127.0.0.1] [--port 12111]``: serve the emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse

from stripe_emulator.app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stripe_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port (printed on start-up)")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
