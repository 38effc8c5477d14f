"""Batch inference: the read-ahead / write-behind pipeline and the fast inverse to each input's grid."""
