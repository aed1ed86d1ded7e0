"""What an operator runs: the `tripwire` command line, kill/release/tail, incidents, replay, the sinks
runner and the local `up`/`down` stack."""
