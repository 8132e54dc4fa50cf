"""``python -m mot_lightning.commands <command> ...``: the ``mot`` command without its console script."""
from mot_lightning.commands.main import main

main()
