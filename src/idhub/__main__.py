from idhub.cli import main

main()
