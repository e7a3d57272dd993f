-- POST: each record is a DER OCSPRequest body (with or without a nonce).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
   local list = {}
   local headers = { ["Content-Type"] = "application/ocsp-request" }
   for _, body in ipairs(load_records(args)) do
      list[#list + 1] = wrk.format("POST", wrk.path, headers, body)
   end
   use_requests(list)
end
