-- wrk script: POST /v1/orders with 3-line orders, each with its own client_ref and
-- Idempotency-Key. Usage (see tools/bench/README.md):
--   KEY=<api key> wrk -t2 -c64 -d30s -s tools/bench/intake.lua http://127.0.0.1:8080
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  run = tostring(os.time())
  auth = "Bearer " .. (os.getenv("KEY") or "")
  template = '{"client_ref":"%s","customer":{"external_id":"CUST-42","name":"Acme GmbH",'
    .. '"email":"buyer@acme.example"},"shipping_address":{"line1":"Hauptstrasse 1","city":"Berlin",'
    .. '"postal_code":"10115","country":"DE"},"currency":"EUR","lines":['
    .. '{"sku":"SKU-RED-MUG","name":"Red mug","quantity":2,"unit_price":"12.50"},'
    .. '{"sku":"SKU-TEA","name":"Green tea","quantity":3,"unit_price":"4.99"},'
    .. '{"sku":"SKU-SPOON","name":"Spoon","quantity":1,"unit_price":"0.75"}]}'
end

function request()
  counter = counter + 1
  local ref = string.format("wrk-%s-%d-%d", run, tid, counter)
  return wrk.format("POST", "/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth,
    ["Idempotency-Key"] = ref,
  }, string.format(template, ref))
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= 201 and (statuses[status] <= 3) then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
  end
end
