"""avatarcast: a cartoon avatar that reacts, live, to what a person says.

One import namespace for the shipped packages, which live in the repository's top-level
folders: `avatarcast.realtime` (server, sessions, transports, ASR, emotion, scheduling),
`avatarcast.engines` (models, sampler, backends; no sockets), `avatarcast.templates` (emotion
templates, the latents cache). pyproject's package-dir puts them inside this package when it
is installed. A source checkout used without installing it (a GPU machine running
`python -m tools...` from the tree) finds them beside this folder instead.
"""

import os as _os

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and _os.path.isdir(_os.path.join(_ROOT, "realtime")):
    __path__.append(_ROOT)
