"""`python -m lorastudio` runs the CLI."""

from lorastudio.cli.main import main

main()
