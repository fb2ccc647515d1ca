from protloc.cli.main import main

__all__ = ["main"]
