from imchat.cli import main

main()
