"""The browser page of ``clip4vla-search`` (``clip4vla-search serve``): ``app`` (routes, server),
``library`` (index, model and files behind it, read only), ``thumbnails`` (posters, spectrograms).
Imported only by the ``serve`` command, so Flask stays out of every other import."""
