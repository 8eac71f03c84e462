from sid.commands import main

main()
