from billing_cli.main import main

main()
