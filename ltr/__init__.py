"""Learning to rank: a LightGBM LambdaMART stage over the served pipeline's candidates."""
