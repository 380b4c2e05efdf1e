"""Reports, all rebuilt from the journal: result.json, junit.xml, the HTML summary."""
