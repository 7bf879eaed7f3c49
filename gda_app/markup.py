"""User text in Streamlit's markdown: every st.markdown, st.caption, st.info, st.error, ...
renders markdown, so a class named ``![x](https://host/pixel)`` would load a remote image and a
file named ``[open me](https://...).csv`` would become a link. Whatever the user named (class
names, file names, column names inside error messages) goes through :func:`escape` first."""

from __future__ import annotations

import re
import string

#: every ASCII punctuation character: CommonMark lets each be backslash-escaped to a literal,
#: which also defeats GFM autolinks (``https\://``), Streamlit's ``:red[...]`` and ``$`` maths
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")


def escape(text: object) -> str:
    """``text`` as literal markdown: punctuation backslash-escaped, line breaks made spaces
    (a newline could start a heading or a list)."""
    return _PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))
