"""`python -m services.cli` (and `torchrun -m services.cli`): the `mor` command line."""
from services.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
