-- wrk script: the raw limit, plain POSTs of an event-sized body to the receiver.
local payload = string.rep("x", 330)
function request()
  return wrk.format("POST", "/raw", {["Content-Type"] = "application/json"}, payload)
end
