"""Views shared by the pages and the tour, one module per subject.

Each draws one view of the current image where it is called. ``key`` prefixes its widgets' keys, so
a page and the tour keep separate settings; ``controls=False`` fixes the settings instead of offering
widgets (the tour). Presenter mode hides colour pickers and downloads.
"""
