"""``python -m fcos_d2.data.synthetic``: see :mod:`fcos_d2.data.synthetic.cli`."""
from .cli import main

main()
