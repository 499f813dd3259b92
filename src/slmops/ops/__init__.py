"""Client-side deployment tools, above ``serve`` and ``evaluate``: the target they talk to (a
store model started as a local server, or any OpenAI-compatible URL), the load bench
(``slmops bench``) and the deployment checklist (``slmops validate``)."""
