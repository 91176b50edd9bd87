"""How `tape --help` texts are laid out: descriptions kept as written, each option's default shown."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; ``(default: X)`` after an option's help when it has a real default.

    A default that is None or False (an optional value, a flag) or already named in the help
    text is not repeated.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or action.option_strings == [] or isinstance(default, list)):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


__all__ = ["HelpFormatter"]
