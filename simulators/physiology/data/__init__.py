"""Parameter tables of the in-silico population (package data, loaded by ``params``)."""
