"""What a run leaves for people to read: result rows (``results.jsonl``), leaderboard tables, plots and
the HTML report."""
