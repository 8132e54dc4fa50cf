"""The ``mot`` commands: the top layer. One module per command, named after it (``mot <name>`` lives in
``commands/<name>.py``; ``fit.py`` serves fit, validate and test), and ``main.py`` dispatches to them. They
parse arguments, call the library and print; nothing in the library imports them.

``python -m mot_lightning.commands <command> ...`` is the ``mot`` console script.
"""
