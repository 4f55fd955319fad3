# Entry point: everything lives in the vend package so it can be precompiled to .mpy.
from vend import app

app.main()
