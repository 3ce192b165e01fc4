from billing_cli.main import main

main(prog_name="billing")
