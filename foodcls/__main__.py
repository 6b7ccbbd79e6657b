from foodcls.cli import app

app(prog_name="foodcls")
