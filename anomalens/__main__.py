from anomalens.cli import main

main()
