"""`python -m cupycnn`: the `cupycnn` command (cupycnn/command.py)."""
from .command import main

raise SystemExit(main())
