"""``--help`` text for the command-line tools of mdp_hub and training: plain text, never broken inside a name.

argparse wraps help at hyphens (``mdp-`` / ``hub/mdp_resnet50...``) and module docstrings carry reST markup
(````python -m ...````); :class:`HelpFormatter` and :func:`plain` fix both.

    parser = argparse.ArgumentParser(description=plain(__doc__), formatter_class=HelpFormatter)
"""

from __future__ import annotations

import argparse
import re
import textwrap

_LITERAL = re.compile(r"``(.+?)``")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's own line breaks (examples stay aligned) and wraps option help between words only."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def plain(text: str | None) -> str:
    """A docstring as terminal text: reST literals ````x```` become ```x```, surrounding blank lines go."""
    return _LITERAL.sub(r"`\1`", textwrap.dedent(text or "")).strip()
