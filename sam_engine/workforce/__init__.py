"""The annotation workforce: who works on what, how their work is checked, and the simulated annotators.

``queue`` (tasks by expertise and load) and ``assign`` (an admin's pool assignment); ``gold`` (honeypot
scoring), ``consensus`` (overlapping masks resolved by IoU matching and a weighted vote) and ``stats``
(annotator statistics); ``simulated`` (annotators and reviewers who click through the session API, as people
do in the browser tool of :mod:`sam_engine.annotation`) and ``timing`` (their modelled seconds).
"""
