"""mkdocs hook: a redirect page keeps the visitor's anchor instead of appending it to its own.

The API reference of 0.1 had one page per module; ``mkdocs-redirects`` sends those URLs to the
module's section of a wing page (``api/model/`` -> ``api/core/#protohead.model``). Its page
appends the visitor's anchor to the target's, so a deep link such as
``api/model/#protohead.model.TReX`` would end on ``#protohead.model#protohead.model.TReX``,
which matches no id. The object ids did not change with the pages, so the visitor's anchor alone
is the right target: it replaces the section anchor when there is one.
"""

from __future__ import annotations

from mkdocs_redirects import plugin

_APPEND = 'location.href="{url}"+(anchor?"#"+anchor:"")'
_REPLACE = 'location.href=anchor?"{url}".split("#")[0]+"#"+anchor:"{url}"'

if _APPEND not in plugin.HTML_TEMPLATE and _REPLACE not in plugin.HTML_TEMPLATE:
    # A new plugin version changed its page: fail the build rather than ship broken deep links.
    raise RuntimeError("mkdocs-redirects changed its HTML template; update docs/_hooks")
plugin.HTML_TEMPLATE = plugin.HTML_TEMPLATE.replace(_APPEND, _REPLACE)
