from bnnctl.cli import main

main()
