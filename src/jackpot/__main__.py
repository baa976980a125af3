"""`python -m jackpot`: the `jackpot` command, as the console script runs it."""

from jackpot.cli import main

if __name__ == "__main__":
    main()
