// Live updates for the fedgw console: every 2 s the JSON API (/api/v1/...) is read and the
// tables and the topology's link colours and labels are redrawn. Without this script the page
// shows the data as rendered by the gateway.
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  var headers = token ? { Authorization: "Bearer " + token } : {};
  var base = location.pathname.replace(/[^/]*$/, "");
  var live = document.getElementById("live");
  // the audit filter form keeps the token a browser came with
  var form = document.querySelector("#audit form");
  if (token && form) {
    var hidden = document.createElement("input");
    hidden.type = "hidden"; hidden.name = "token"; hidden.value = token;
    form.appendChild(hidden);
  }

  function get(path) {
    return fetch(base + path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
      return r.json();
    });
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function dash(v) { return v === null || v === undefined ? "–" : esc(v); }
  function ports(p) {
    var k = Object.keys(p || {});
    return k.length ? esc(k.map(function (n) { return n + " " + p[n]; }).join(", ")) : "–";
  }
  function label(l) {
    if (l.transport && l.rtt_ms !== null) { return l.transport + " " + l.rtt_ms.toFixed(1) + " ms"; }
    return l.transport || l.state;
  }
  var sites = null;

  function topology(t) {
    document.getElementById("digest").textContent = t.digest;
    var now = t.orgs.map(function (o) { return o.org + ":" + o.status + ":" + o.sites.map(function (s) { return s.id; }).join(","); }).join(";");
    if (sites !== null && sites !== now) { location.reload(); return; }
    sites = now;
    var rows = "";
    t.links.forEach(function (l) {
      document.querySelectorAll("#topology .link").forEach(function (g) {
        if (g.getAttribute("data-a") === l.a && g.getAttribute("data-b") === l.b) {
          g.setAttribute("class", "link " + l.state);
          g.querySelector("text").textContent = label(l);
          g.querySelector("title").textContent = l.a + " – " + l.b + ": " + l.state;
        }
      });
      rows += '<tr class="link-row ' + l.state + '"><td>' + esc(l.a) + "</td><td>" + esc(l.b) +
        '</td><td><span class="state ' + l.state + '">' + l.state + "</span></td><td>" + dash(l.transport) +
        "</td><td>" + (l.rtt_ms === null ? "–" : l.rtt_ms.toFixed(1) + " ms") + "</td><td>" + dash(l.sync) + "</td></tr>";
    });
    document.querySelector("#links-table tbody").innerHTML = rows || '<tr><td colspan="6">no links: one site only</td></tr>';
  }

  function nodes(n) {
    var rows = n.nodes.map(function (x) {
      var local = x.local_address === null ? "–" :
        esc(x.local_address) + (Object.keys(x.local_ports).length ? " (" + ports(x.local_ports) + ")" : "");
      var reach = x.reachability.replace("_", " ");
      return '<tr class="node"><td>' + esc(x.org) + "</td><td>" + esc(x.name) + "</td><td>" + esc(x.consortium_name) +
        "</td><td>" + dash(x.client) + "</td><td>" + ports(x.ports) + "</td><td>" + local +
        '</td><td><span class="reach ' + reach.replace(" ", "-") + '">' + reach + "</span></td></tr>";
    }).join("");
    document.querySelector("#nodes-table tbody").innerHTML = rows || '<tr><td colspan="7">no nodes registered</td></tr>';
  }

  function members(m) {
    var rows = m.members.map(function (x) {
      var gws = x.gateways.map(function (g) {
        return esc(g.site) + (g.outbound_only ? ", outbound only" : "") + " (" + esc(g.advertise.join(", ")) + ")";
      }).join("<br>");
      var at = x.admitted_unix === null ? "–" : new Date(x.admitted_unix * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      return '<tr class="member"><td>' + esc(x.org) + "</td><td>" + at + "</td><td>" + gws + "</td></tr>";
    }).join("");
    document.querySelector("#members-table tbody").innerHTML = rows;
  }

  function audit(a) {
    var table = document.querySelector("#audit-table tbody");
    if (!a.available || !table) { return; }
    table.innerHTML = a.entries.map(function (e) {
      return '<tr class="audit"><td>' + dash(e.at) + "</td><td>" + dash(e.org) + "</td><td>" + dash(e.kind) +
        "</td><td>" + dash(e.summary) + "</td></tr>";
    }).join("") || '<tr><td colspan="4">no entries match</td></tr>';
  }

  function poll() {
    var q = new URLSearchParams();
    if (params.get("org")) { q.set("org", params.get("org")); }
    if (params.get("kind")) { q.set("kind", params.get("kind")); }
    Promise.all([get("api/v1/topology"), get("api/v1/nodes"), get("api/v1/members"), get("api/v1/audit?" + q)])
      .then(function (r) {
        topology(r[0]); nodes(r[1]); members(r[2]); audit(r[3]);
        live.textContent = "live · updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { live.textContent = "live updates failing: " + e.message; })
      .then(function () { setTimeout(poll, 2000); });
  }
  live.textContent = "live";
  setTimeout(poll, 2000);
})();
