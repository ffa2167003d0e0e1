"""The steps that need both a model and the feature database: the harvest, the dictionary build
(decoder directions, logit effects), text search and the demo, calling `sae` and `index` as
functions."""
