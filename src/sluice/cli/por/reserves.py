"""(commands added by this module)"""
