"""The chat front end's parts (``app.py`` wires them into Chainlit's handlers).

``auth`` (sign-in, who is asking), ``data_layer`` (chat history on SQLite), ``chat_settings`` (the
settings panel), ``uploads`` (attached images), ``markdown`` (what the steps and messages say),
``turn_view`` (one turn streamed into the chat) and ``reviews`` (a paused turn's buttons). Nothing
here imports ``app``.
"""
