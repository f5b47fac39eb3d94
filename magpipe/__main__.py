from magpipe.cli import main

main()
