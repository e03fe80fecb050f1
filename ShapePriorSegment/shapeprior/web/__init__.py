"""The browser face (``shapeprior serve``, extra ``[web]``): the delineation loop in a web page on real
Slicer views (trame-slicer over slicer-core), with the module's Logic and the MRML bridge unchanged.

- :mod:`.files`: paths confined to the data folder, size-limited uploads, images checked first;
- :mod:`.session`: one reader's scene, Logic and files, without UI (the tests drive it);
- :mod:`.app`: the page (trame, vuetify 3) and :func:`~.app.serve`.
"""
