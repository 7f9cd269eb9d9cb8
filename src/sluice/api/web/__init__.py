"""The web pages served by ``sluice serve`` beside the API (``docs/web.md``): ``/login`` and
``/logout``, the staff dashboard under ``/dashboard``, and the customer's page ``/me``.

Server-rendered (Jinja2), with no build step: the pages work without scripts (a vendored
script adds live refresh only). Sessions are rows of the Integration DB (:mod:`.sessions`);
every page and action goes through the same services, roles and approvals as the API.

A new page is a module with a ``router`` and one line in
:data:`sluice.api.web.install.ROUTERS`.
"""
