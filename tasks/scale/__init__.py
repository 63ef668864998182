"""The scale rehearsal (``python -m flows.scale``): synthetic papers and vectors through
every stage of a sweep and its applications, measured per stage."""
