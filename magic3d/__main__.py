from magic3d.cli import main

main()
