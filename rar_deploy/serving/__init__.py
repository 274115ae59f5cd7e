"""Serving an artifact folder: Ray Serve (`rar-serve`, extra `[serve]`) and a Triton model repository
(`rar-deploy triton-repo`). protocol.py is the request/response both share; Ray is imported only by
ray_serve.py and server.py."""
