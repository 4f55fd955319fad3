"""Security tests replay attacks found against a running site; each feature's fixtures live in
its own ``sec_*_support.py`` module, imported by the test files that use them."""
