from mirrord.cli.main import main

main()
