"""`python -m cupycnn.data`: the dataset tools, also `cupycnn data` (cupycnn/data/tools.py)."""
from .tools import main

raise SystemExit(main())
