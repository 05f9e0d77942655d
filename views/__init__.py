"""What a person sees of runs outside the terminal: the self-contained HTML report
(:mod:`views.report`) and the live web dashboard (:mod:`views.dashboard`, served by
:mod:`views.server`). Templates ship as package data under ``views/templates``."""
