"""Request bodies as clients send them, decoded and validated: what the api layer parses and the
pipeline prepares. Below both, so that dependencies point one way (api -> pipeline -> protocol),
as SMG keeps its protocols in a crate of their own."""
