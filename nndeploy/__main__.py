"""`python -m nndeploy` runs the command line."""

from nndeploy.cli import main

main()
