from magpipe.cli import app

app(prog_name="magpipe")
