// Starts GraphiQL on this platform's endpoint. Every file the page loads is
// served by the platform itself: it works without internet.
(function () {
  "use strict";
  var http = new URL("/graphql", window.location.href);
  var socket = new URL("/graphql", window.location.href);
  socket.protocol = socket.protocol === "https:" ? "wss:" : "ws:";
  var fetcher = GraphiQL.createFetcher({
    url: http.toString(),
    subscriptionUrl: socket.toString(),
  });
  var example = [
    "# Products are public. For orders, put your token in the Headers",
    "# pane below: {\"Authorization\": \"Bearer <token>\"}",
    "{",
    "  products(first: 5) {",
    "    nodes { sku name priceCents onHand available }",
    "  }",
    "}",
    "",
  ].join("\n");
  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: example,
      // A token typed into the Headers pane stays in this tab only.
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: true,
    })
  );
})();
