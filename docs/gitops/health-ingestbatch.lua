-- Argo CD health of an IngestBatch: Healthy once it succeeded, Degraded when it failed,
-- Progressing while it is queued or running (with its progress as the message).
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to admit the batch"
  return hs
end
local message = obj.status.phase
if obj.status.progress ~= nil then
  message = message .. ": " .. obj.status.progress .. " files"
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == obj.status.phase and condition.message ~= nil and condition.message ~= "" then
      message = message .. " (" .. condition.message .. ")"
    end
  end
end
hs.message = message
if obj.status.phase == "Succeeded" then
  hs.status = "Healthy"
elseif obj.status.phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs
