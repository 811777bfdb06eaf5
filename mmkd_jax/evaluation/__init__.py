"""Evaluating and getting out a trained student: evaluation over a split, the evaluators by name,
and export / load-and-predict."""
